"""Evaluation building blocks: metric maths, subgroups, plots and the model card.

The evaluate stage (medflow.evaluate) and the gate stage (medflow.gate) compose them.
"""
