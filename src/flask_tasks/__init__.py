"""Celery background tasks as a first-class part of Flask."""

from .exceptions import BrokerUnavailable as BrokerUnavailable
from .exceptions import ConfigError as ConfigError
from .exceptions import PublishError as PublishError
from .exceptions import TaskCancelled as TaskCancelled
from .exceptions import TasksError as TasksError
from .extension import FlaskCelery as FlaskCelery
from .extension import Tasks as Tasks
from .extension import TasksState as TasksState
from .progress import current_task as current_task
from .progress import is_cancelled as is_cancelled
from .progress import progress as progress
from .state import Progress as Progress
from .state import TaskError as TaskError
from .state import TaskRecord as TaskRecord
from .state import TaskState as TaskState
from .store.base import CancelOutcome as CancelOutcome
from .store.base import StoreError as StoreError
from .task import FlaskTask as FlaskTask
from .task import Task as Task
from .task import TaskResult as TaskResult
