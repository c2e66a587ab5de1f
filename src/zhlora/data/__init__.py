"""Instruction data: readers for the Chinese instruction formats -> `Conversation`."""
from zhlora.conversation import Conversation, Message

__all__ = ["Conversation", "Message"]
