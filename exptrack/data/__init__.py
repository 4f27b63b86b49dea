"""The data side: dataset layout, demo data, frame cache, clip index, transforms, Dataset."""
