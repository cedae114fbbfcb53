"""Serving export: the trained ranker as a self-contained torch.export artifact, scored with torch only."""
