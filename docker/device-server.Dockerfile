# The device server alone, for a target board: ONNX Runtime + FastAPI, no torch.
# modeltailor.devices imports nothing above it (tests/test_layers.py checks that), so the server
# runs from the bottom rooms of the package: __init__.py, errors.py, common/ and devices/.
#   docker build -f docker/device-server.Dockerfile -t modeltailor-device-server .
#   docker run --rm -p 8765:8765 -e MODELTAILOR_DEVICE_TOKEN=SECRET modeltailor-device-server
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1 PYTHONPATH=/opt
RUN pip install "onnxruntime>=1.18" "onnx>=1.16" "numpy>=1.26" "fastapi>=0.110" "uvicorn>=0.29" \
    "pydantic>=2.6" "pyyaml>=6" "requests>=2.31" "filelock>=3.12"

COPY __init__.py errors.py /opt/modeltailor/
COPY common /opt/modeltailor/common
COPY devices /opt/modeltailor/devices

EXPOSE 8765
ENTRYPOINT ["python", "-m", "modeltailor.devices.server", "--host", "0.0.0.0", "--port", "8765"]
