S 我 昨天 去 了 图书管 借 书 。
A 4 5|||S|||图书馆|||REQUIRED|||-NONE-|||0
A 4 5|||S|||图书馆|||REQUIRED|||-NONE-|||1
A 2 3|||S|||到|||REQUIRED|||-NONE-|||1

S 他 非常 喜欢 看 NBA 比赛 。
A -1 -1|||noop|||-NONE-|||REQUIRED|||-NONE-|||0

S 这 个 问题 很 很 复杂 的 。
A 3 4|||R|||-NONE-|||REQUIRED|||-NONE-|||0
A 6 7|||R|||-NONE-|||REQUIRED|||-NONE-|||0
A 0 0|||M|||其实|||REQUIRED|||-NONE-|||1
A 3 4|||R|||-NONE-|||REQUIRED|||-NONE-|||1
