"""The bottom layer: imported by every other part of histopipe, importing none of them."""
