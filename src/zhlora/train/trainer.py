"""transformers' Trainer with the loss computed at label positions only (zhlora.train.loss).

Only `compute_loss` changes, and only for batches with labels and no label smoothing or
custom loss function: the normalisation follows the Trainer's own (divide by
`num_items_in_batch` when the model accepts loss kwargs, as it does for every family here, so
gradient accumulation and the reported loss are unchanged; eval batches get the mean).
"""
from __future__ import annotations

from transformers import Trainer

from zhlora.train.loss import capture_head_input, label_only_loss, output_head


class LabelOnlyLossTrainer(Trainer):
    """Trainer whose training and eval loss skip the LM head at unlabeled positions."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if "labels" not in inputs or self.label_smoother is not None or self.compute_loss_func is not None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs["labels"]
        head = output_head(self.accelerator.unwrap_model(model))
        with capture_head_input(head) as seen:
            outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
        n_items = num_items_in_batch if self.model_accepts_loss_kwargs else None
        loss = label_only_loss(seen[-1], labels, head, n_items)
        if self.args.average_tokens_across_devices and self.model_accepts_loss_kwargs \
                and num_items_in_batch is not None:
            # as Trainer.compute_loss: num_items_in_batch counts the labels of all processes
            tp = self.get_tp_size() if hasattr(self, "get_tp_size") else 1
            loss = loss * (self.accelerator.num_processes // tp if self.args.n_gpu <= 1 else self.args.n_gpu)
        return (loss, outputs) if return_outputs else loss
