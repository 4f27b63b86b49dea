"""Explanations: GradCAM heatmaps (gradcam.py) and their rendering to video (render.py)."""
