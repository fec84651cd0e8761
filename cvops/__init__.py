"""cvops — computer-vision model optimization and deployment platform."""

__version__ = "0.1.0"
