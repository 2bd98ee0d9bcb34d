"""Models: HF loading (local or s3://), LoRA, tiny-model factory, tokenizers.

Import the submodules directly (``sentiray.models.loading``, ``sentiray.models.tiny``,
``sentiray.models.tokenizer``): this package stays light so that importing it does not
pull in torch.
"""
