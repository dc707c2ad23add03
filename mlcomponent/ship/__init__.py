"""From a module folder to a live service: image (build, push), model (upload), cluster (deploy, status)."""
