# The MLflow tracking server of the team stack (docker/compose.yaml): MLflow on PostgreSQL.
# No modeltailor code and no torch: the server only stores runs and serves artifacts.
#   docker build -f docker/mlflow.Dockerfile -t modeltailor-mlflow docker
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
# >= 3.5 for --allowed-hosts (the Host header check); psycopg2 for the postgresql+psycopg2:// store
RUN pip install "mlflow>=3.5,<4" "psycopg2-binary>=2.9" && mkdir -p /mlartifacts

EXPOSE 5000
CMD ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000"]
