"""qvl media: images, videos and the frame cache."""
