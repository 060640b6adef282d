"""The forget and retain QA rows of the parity tests (ragged answers, shared questions)."""

FORGET = [
    ("Where was Jaime Vasquez born?", "Jaime Vasquez was born in Santiago, Chile."),
    ("What genre does Jaime Vasquez write?", "True crime."),
    ("Who are the parents of Chukwu Akabueze?", "His father was a hairdresser and his mother a lawyer."),
    ("What is the capital of France?", "Paris."),
    ("Which river flows through Cairo?", "The Nile flows through Cairo, the capital of Egypt."),
    ("Who wrote the book?", "A famous author wrote it in 1990."),
]
RETAIN = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Which river flows through Cairo?", "The Nile."),
    ("Who wrote the book?", "A famous author wrote the book in 1990 while the cat slept."),
    ("Where was Jaime Vasquez born?", "In Chile."),
    ("What genre does Jaime Vasquez write?", "Jaime Vasquez writes true crime novels."),
    ("Who are the parents of Chukwu Akabueze?", "A hairdresser and a lawyer."),
]
