"""Model families built from mmjax.nn; `build_model(config.model, ...)` builds any of them."""
from mmjax.models.registry import MODELS
from mmjax.models.registry import build_model
from mmjax.models.registry import get_model_class
from mmjax.models.registry import resolve_dtype
