"""Detection of generated images: was this image generated? (label 1 = generated).

Every method's score is a logit (``ZooModule.probability`` gives the probability generated): ``zoo predict``,
the benchmark report and the model card show the score and the threshold as probabilities, and the
threshold's logit beside it as ``threshold_logit``.
"""

from zoo.tasks.binary import binary_task

TASK = binary_task(
    "fake_detection", "was this image generated?", positive="generated", negative="real",
    mini_datamodule="MiniFakeDetection", score_is_logit=True, pipeline_tag="image-classification",
    caveat="A probability generated is not proof that an image was generated: it is how much this model's "
    "score resembles the generated images it was calibrated on. Images from other generators, edits and "
    "recompression can move it either way.",
    glossary={
        "threshold": ("the decision threshold calibrated on validation (a setting, not ranked); for fake detection "
                      "a probability generated, as `zoo predict` prints it", "none"),
        "threshold_logit": ("fake detection: the same threshold on the method's logit score (a setting, not "
                            "ranked)", "none"),
    },
)
