"""Kubernetes: the CRD, the objects an MLComponent becomes, and the operator."""
