"""Helpers the tests share: tiny models, test images, checkpoint writers and the tampering of written certificates."""
