"""Compression science: options, accounting, quantizers, masks, packing, search methods.

Pure torch + numpy: no database, no HTTP (DESIGN.md section 6).
"""
