"""Shipped seed data (IFT and EFT) in the oasst1 message schema; see README.md."""
