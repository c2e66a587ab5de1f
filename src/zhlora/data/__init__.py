"""Instruction data: readers for the Chinese instruction formats -> `Conversation`."""
from zhlora.data.conversation import Conversation, Message

__all__ = ["Conversation", "Message"]
