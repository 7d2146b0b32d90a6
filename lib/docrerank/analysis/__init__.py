"""How hard and how diverse negatives are: generated vs document-mined."""
