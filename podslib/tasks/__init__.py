"""What a model is asked and how its answers are graded: data sets, prompt templates, answer
grading and reward terms."""
