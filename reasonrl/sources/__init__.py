"""Data sources backed by external generator libraries, one module each (`load_source` in data.py dispatches)."""
