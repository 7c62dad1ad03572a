"""Reusable Lightning callbacks for adversarial training: one callback per file."""
