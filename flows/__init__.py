# Before anything else: ``python -m flows.<step>`` imports Prefect next, and the stack
# package lets Python cache what it compiles (see stack/__init__.py).
import stack

stack.cache_byte_code()
