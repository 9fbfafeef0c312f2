"""The Chat pane (conversations, messages, composer, settings) and the Compare pane beside it."""
