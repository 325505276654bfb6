"""Release a student on the Hugging Face hub: stage the repository folder, check it loads, upload it.

`python -m publish` (publish/__main__.py) runs it; one module per job: card (the model card), stage (the folder),
check (loading the staged folder back), push (the upload), errors. Nothing is imported here.
"""
