"""The task: does this image carry the watermark? (label 1 = watermarked)."""

from zoo.tasks.binary import binary_task

TASK = binary_task(
    "watermark_detection", "does this image carry the watermark?", positive="watermarked", negative="clean",
    mini_datamodule="MiniWatermark",
)
