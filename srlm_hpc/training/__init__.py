"""Training pieces shared by the sft and dpo stages: tokenization, the optimizer loop, DPO loss."""
