"""Emergency patches: `.beam` bundles rolled out to the nodes that run their release
(docs/patches.md)."""
