"""The train stage's parts: the transformers Trainer on prompt/completion rows (`trainer`, `train_config`,
`collators`, `tokenization`, `modeling`), and `TransformersProvider`, the same training for `dspy.BootstrapFinetune`.
"""
