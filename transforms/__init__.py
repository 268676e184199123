"""The job's Beam stages: read, tokenize, embed, write, errors."""
