"""Copyright authentication: was this image used to fine-tune that diffusion model? (label 1 = member).

The two models, pretrained and fine-tuned, belong to the method's configuration; the batch holds the
suspect images.
"""

from zoo.tasks.base import Field
from zoo.tasks.binary import binary_task

TASK = binary_task(
    "copyright",
    "was this image used to fine-tune that diffusion model?",
    positive="member",
    negative="hold-out",
    mini_datamodule="MiniCopyright",
    caveat="A membership score is evidence that the image was in the fine-tuning set, not proof of infringement, "
    "and it says nothing about whether that use was licensed.",
    extra_prediction={"artifact": Field(str, ("B",), "picture of the evidence (original / masked / recovered)",
                                        required=False)},
)
