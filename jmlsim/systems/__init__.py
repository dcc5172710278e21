"""Builders of ready-made systems."""
