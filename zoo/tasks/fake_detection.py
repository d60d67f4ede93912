"""Detection of generated images: was this image generated? (label 1 = generated)."""

from zoo.tasks.binary import binary_task

TASK = binary_task(
    "fake_detection", "was this image generated?", positive="generated", negative="real",
    mini_datamodule="MiniFakeDetection",
)
