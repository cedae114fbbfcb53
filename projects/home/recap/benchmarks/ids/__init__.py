"""`recap benchmark ids`: our torchrec ranker against a plain-PyTorch reference on data whose engagement depends on
user x author interactions that only learned id embeddings can capture."""
