"""Networks, the LightningModule, the DataModule and the model artifact format."""
