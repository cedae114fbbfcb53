"""`recap benchmark baselines`: our model against plain-PyTorch references on small real-looking data and census."""
