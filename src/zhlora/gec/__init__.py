"""Chinese grammatical error correction (CGEC) on top of zhlora's public API.

- `prompt`: the one GEC instruction shared by training data (`gec synth`, `gec convert`)
  and evaluation (`gec eval`).
- `confusion`, `synth`: synthetic (wrong, correct) pairs from clean sentences.
- `formats`: loaders for the public CGEC formats (NLPCC18, MuCGEC para, FCGEC, CGED,
  SIGHAN) and writers for ours (para, alpaca JSONL).
- `evaluate`: generate corrections with a model and score them (ChERRANT F0.5, SIGHAN).
- `scoring`, `sighan`: the scorers.
- `cli`: `zhlora gec synth|convert|score|sighan|eval`.
"""
