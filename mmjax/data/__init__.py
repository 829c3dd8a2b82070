"""Data: ShapeWorld (procedural image-text source), tokenizers, Grain pipelines, user folders.

`mmjax.data.pipeline` (Grain) and `mmjax.data.folder` (PIL) are imported on demand so that
using a tokenizer or ShapeWorld alone pulls in numpy only.
"""
from mmjax.data.shapeworld import ShapeWorld
from mmjax.data.shapeworld_text import shapeworld_tokenizer
from mmjax.data.tokenizer import Tokenizer
from mmjax.data.tokenizer import WordTokenizer
