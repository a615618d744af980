"""Weight importers from other implementations (diffusers UNet2DModel -> diffjax DDPMUNet)."""
