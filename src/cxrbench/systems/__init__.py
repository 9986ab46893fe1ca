"""The only LightningModules: one system per job kind (pre-training, classification, ...)."""
