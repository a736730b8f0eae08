"""Running trained nnU-Net v2 model folders with medseg."""
