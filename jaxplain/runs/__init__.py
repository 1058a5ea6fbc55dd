"""Data-set runs: a folder of pictures explained, streamed, resumed and reported."""
