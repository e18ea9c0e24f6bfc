"""One deployment's search: workbench, teacher, objective, the episode loop, finalize, outputs."""
