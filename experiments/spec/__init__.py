"""What users write and what runs leave: deployment and campaign specs, the summary.json contract, output file names. Torch-free."""
