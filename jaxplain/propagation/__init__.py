"""Relevance propagation on any JAX forward pass: the traced graph, the LRP rules, composites and
the backward walk that LRP, CRP and DeepLIFT share."""
