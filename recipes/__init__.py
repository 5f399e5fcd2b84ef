"""Training recipes built on fa2dist's attention modules: ``recipes.gpt`` (causal LM) and ``recipes.encoder``
(masked LM). Each is a LightningCLI script with YAML configs; ``recipes.common`` holds what they share."""
