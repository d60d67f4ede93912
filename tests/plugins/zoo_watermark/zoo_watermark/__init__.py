"""A third party's new task for provenance-zoo, plugged in by one entry-point line and its manifest.

``watermark_detection`` asks whether an image carries a known invisible watermark: a fixed pseudo-random
pattern of +-``STRENGTH`` grey levels added to every pixel (``key_pattern``). The plugin brings the task
(``task.py``), a method that correlates an image's high-pass residual with the pattern (``model.py``) and a
mini datamodule of scikit-image photograph windows, half of them watermarked (``data.py``).
"""
