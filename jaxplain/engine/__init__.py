"""The one front door: explain(), evaluate() and predict() share this engine."""
