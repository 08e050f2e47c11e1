"""Full fine-tuning: every weight trains; the result is a complete Hugging Face model folder."""

from .base import Method, register


class FullFineTuning(Method):
    name = "full"
    default_lr = 2e-5
    artifact = "model"
    summary = "every weight trains; best quality ceiling, largest memory and artefact"

    def prepare(self, model, config):
        for param in model.parameters():
            param.requires_grad_(True)
        return model


register(FullFineTuning())
