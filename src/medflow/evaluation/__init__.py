"""Evaluation building blocks: metric maths, subgroups, plots and the model card.

The evaluate stage (medflow.evaluation.scoring) and the gate stage (medflow.evaluation.gate)
compose them.
"""
