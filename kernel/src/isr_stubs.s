    .section .text
isr_stub_0:
    push 0
    push 0
    jmp isr_common
isr_stub_1:
    push 0
    push 1
    jmp isr_common
isr_stub_2:
    push 0
    push 2
    jmp isr_common
isr_stub_3:
    push 0
    push 3
    jmp isr_common
isr_stub_4:
    push 0
    push 4
    jmp isr_common
isr_stub_5:
    push 0
    push 5
    jmp isr_common
isr_stub_6:
    push 0
    push 6
    jmp isr_common
isr_stub_7:
    push 0
    push 7
    jmp isr_common
isr_stub_8:
    push 8
    jmp isr_common
isr_stub_9:
    push 0
    push 9
    jmp isr_common
isr_stub_10:
    push 10
    jmp isr_common
isr_stub_11:
    push 11
    jmp isr_common
isr_stub_12:
    push 12
    jmp isr_common
isr_stub_13:
    push 13
    jmp isr_common
isr_stub_14:
    push 14
    jmp isr_common
isr_stub_15:
    push 0
    push 15
    jmp isr_common
isr_stub_16:
    push 0
    push 16
    jmp isr_common
isr_stub_17:
    push 17
    jmp isr_common
isr_stub_18:
    push 0
    push 18
    jmp isr_common
isr_stub_19:
    push 0
    push 19
    jmp isr_common
isr_stub_20:
    push 0
    push 20
    jmp isr_common
isr_stub_21:
    push 21
    jmp isr_common
isr_stub_22:
    push 0
    push 22
    jmp isr_common
isr_stub_23:
    push 0
    push 23
    jmp isr_common
isr_stub_24:
    push 0
    push 24
    jmp isr_common
isr_stub_25:
    push 0
    push 25
    jmp isr_common
isr_stub_26:
    push 0
    push 26
    jmp isr_common
isr_stub_27:
    push 0
    push 27
    jmp isr_common
isr_stub_28:
    push 0
    push 28
    jmp isr_common
isr_stub_29:
    push 29
    jmp isr_common
isr_stub_30:
    push 30
    jmp isr_common
isr_stub_31:
    push 0
    push 31
    jmp isr_common
isr_stub_32:
    push 0
    push 32
    jmp isr_common
isr_stub_33:
    push 0
    push 33
    jmp isr_common
isr_stub_34:
    push 0
    push 34
    jmp isr_common
isr_stub_35:
    push 0
    push 35
    jmp isr_common
isr_stub_36:
    push 0
    push 36
    jmp isr_common
isr_stub_37:
    push 0
    push 37
    jmp isr_common
isr_stub_38:
    push 0
    push 38
    jmp isr_common
isr_stub_39:
    push 0
    push 39
    jmp isr_common
isr_stub_40:
    push 0
    push 40
    jmp isr_common
isr_stub_41:
    push 0
    push 41
    jmp isr_common
isr_stub_42:
    push 0
    push 42
    jmp isr_common
isr_stub_43:
    push 0
    push 43
    jmp isr_common
isr_stub_44:
    push 0
    push 44
    jmp isr_common
isr_stub_45:
    push 0
    push 45
    jmp isr_common
isr_stub_46:
    push 0
    push 46
    jmp isr_common
isr_stub_47:
    push 0
    push 47
    jmp isr_common
isr_stub_48:
    push 0
    push 48
    jmp isr_common
isr_stub_49:
    push 0
    push 49
    jmp isr_common
isr_stub_50:
    push 0
    push 50
    jmp isr_common
isr_stub_51:
    push 0
    push 51
    jmp isr_common
isr_stub_52:
    push 0
    push 52
    jmp isr_common
isr_stub_53:
    push 0
    push 53
    jmp isr_common
isr_stub_54:
    push 0
    push 54
    jmp isr_common
isr_stub_55:
    push 0
    push 55
    jmp isr_common
isr_stub_56:
    push 0
    push 56
    jmp isr_common
isr_stub_57:
    push 0
    push 57
    jmp isr_common
isr_stub_58:
    push 0
    push 58
    jmp isr_common
isr_stub_59:
    push 0
    push 59
    jmp isr_common
isr_stub_60:
    push 0
    push 60
    jmp isr_common
isr_stub_61:
    push 0
    push 61
    jmp isr_common
isr_stub_62:
    push 0
    push 62
    jmp isr_common
isr_stub_63:
    push 0
    push 63
    jmp isr_common
isr_stub_64:
    push 0
    push 64
    jmp isr_common
isr_stub_65:
    push 0
    push 65
    jmp isr_common
isr_stub_66:
    push 0
    push 66
    jmp isr_common
isr_stub_67:
    push 0
    push 67
    jmp isr_common
isr_stub_68:
    push 0
    push 68
    jmp isr_common
isr_stub_69:
    push 0
    push 69
    jmp isr_common
isr_stub_70:
    push 0
    push 70
    jmp isr_common
isr_stub_71:
    push 0
    push 71
    jmp isr_common
isr_stub_72:
    push 0
    push 72
    jmp isr_common
isr_stub_73:
    push 0
    push 73
    jmp isr_common
isr_stub_74:
    push 0
    push 74
    jmp isr_common
isr_stub_75:
    push 0
    push 75
    jmp isr_common
isr_stub_76:
    push 0
    push 76
    jmp isr_common
isr_stub_77:
    push 0
    push 77
    jmp isr_common
isr_stub_78:
    push 0
    push 78
    jmp isr_common
isr_stub_79:
    push 0
    push 79
    jmp isr_common
isr_stub_80:
    push 0
    push 80
    jmp isr_common
isr_stub_81:
    push 0
    push 81
    jmp isr_common
isr_stub_82:
    push 0
    push 82
    jmp isr_common
isr_stub_83:
    push 0
    push 83
    jmp isr_common
isr_stub_84:
    push 0
    push 84
    jmp isr_common
isr_stub_85:
    push 0
    push 85
    jmp isr_common
isr_stub_86:
    push 0
    push 86
    jmp isr_common
isr_stub_87:
    push 0
    push 87
    jmp isr_common
isr_stub_88:
    push 0
    push 88
    jmp isr_common
isr_stub_89:
    push 0
    push 89
    jmp isr_common
isr_stub_90:
    push 0
    push 90
    jmp isr_common
isr_stub_91:
    push 0
    push 91
    jmp isr_common
isr_stub_92:
    push 0
    push 92
    jmp isr_common
isr_stub_93:
    push 0
    push 93
    jmp isr_common
isr_stub_94:
    push 0
    push 94
    jmp isr_common
isr_stub_95:
    push 0
    push 95
    jmp isr_common
isr_stub_96:
    push 0
    push 96
    jmp isr_common
isr_stub_97:
    push 0
    push 97
    jmp isr_common
isr_stub_98:
    push 0
    push 98
    jmp isr_common
isr_stub_99:
    push 0
    push 99
    jmp isr_common
isr_stub_100:
    push 0
    push 100
    jmp isr_common
isr_stub_101:
    push 0
    push 101
    jmp isr_common
isr_stub_102:
    push 0
    push 102
    jmp isr_common
isr_stub_103:
    push 0
    push 103
    jmp isr_common
isr_stub_104:
    push 0
    push 104
    jmp isr_common
isr_stub_105:
    push 0
    push 105
    jmp isr_common
isr_stub_106:
    push 0
    push 106
    jmp isr_common
isr_stub_107:
    push 0
    push 107
    jmp isr_common
isr_stub_108:
    push 0
    push 108
    jmp isr_common
isr_stub_109:
    push 0
    push 109
    jmp isr_common
isr_stub_110:
    push 0
    push 110
    jmp isr_common
isr_stub_111:
    push 0
    push 111
    jmp isr_common
isr_stub_112:
    push 0
    push 112
    jmp isr_common
isr_stub_113:
    push 0
    push 113
    jmp isr_common
isr_stub_114:
    push 0
    push 114
    jmp isr_common
isr_stub_115:
    push 0
    push 115
    jmp isr_common
isr_stub_116:
    push 0
    push 116
    jmp isr_common
isr_stub_117:
    push 0
    push 117
    jmp isr_common
isr_stub_118:
    push 0
    push 118
    jmp isr_common
isr_stub_119:
    push 0
    push 119
    jmp isr_common
isr_stub_120:
    push 0
    push 120
    jmp isr_common
isr_stub_121:
    push 0
    push 121
    jmp isr_common
isr_stub_122:
    push 0
    push 122
    jmp isr_common
isr_stub_123:
    push 0
    push 123
    jmp isr_common
isr_stub_124:
    push 0
    push 124
    jmp isr_common
isr_stub_125:
    push 0
    push 125
    jmp isr_common
isr_stub_126:
    push 0
    push 126
    jmp isr_common
isr_stub_127:
    push 0
    push 127
    jmp isr_common
isr_stub_128:
    push 0
    push 128
    jmp isr_common
isr_stub_129:
    push 0
    push 129
    jmp isr_common
isr_stub_130:
    push 0
    push 130
    jmp isr_common
isr_stub_131:
    push 0
    push 131
    jmp isr_common
isr_stub_132:
    push 0
    push 132
    jmp isr_common
isr_stub_133:
    push 0
    push 133
    jmp isr_common
isr_stub_134:
    push 0
    push 134
    jmp isr_common
isr_stub_135:
    push 0
    push 135
    jmp isr_common
isr_stub_136:
    push 0
    push 136
    jmp isr_common
isr_stub_137:
    push 0
    push 137
    jmp isr_common
isr_stub_138:
    push 0
    push 138
    jmp isr_common
isr_stub_139:
    push 0
    push 139
    jmp isr_common
isr_stub_140:
    push 0
    push 140
    jmp isr_common
isr_stub_141:
    push 0
    push 141
    jmp isr_common
isr_stub_142:
    push 0
    push 142
    jmp isr_common
isr_stub_143:
    push 0
    push 143
    jmp isr_common
isr_stub_144:
    push 0
    push 144
    jmp isr_common
isr_stub_145:
    push 0
    push 145
    jmp isr_common
isr_stub_146:
    push 0
    push 146
    jmp isr_common
isr_stub_147:
    push 0
    push 147
    jmp isr_common
isr_stub_148:
    push 0
    push 148
    jmp isr_common
isr_stub_149:
    push 0
    push 149
    jmp isr_common
isr_stub_150:
    push 0
    push 150
    jmp isr_common
isr_stub_151:
    push 0
    push 151
    jmp isr_common
isr_stub_152:
    push 0
    push 152
    jmp isr_common
isr_stub_153:
    push 0
    push 153
    jmp isr_common
isr_stub_154:
    push 0
    push 154
    jmp isr_common
isr_stub_155:
    push 0
    push 155
    jmp isr_common
isr_stub_156:
    push 0
    push 156
    jmp isr_common
isr_stub_157:
    push 0
    push 157
    jmp isr_common
isr_stub_158:
    push 0
    push 158
    jmp isr_common
isr_stub_159:
    push 0
    push 159
    jmp isr_common
isr_stub_160:
    push 0
    push 160
    jmp isr_common
isr_stub_161:
    push 0
    push 161
    jmp isr_common
isr_stub_162:
    push 0
    push 162
    jmp isr_common
isr_stub_163:
    push 0
    push 163
    jmp isr_common
isr_stub_164:
    push 0
    push 164
    jmp isr_common
isr_stub_165:
    push 0
    push 165
    jmp isr_common
isr_stub_166:
    push 0
    push 166
    jmp isr_common
isr_stub_167:
    push 0
    push 167
    jmp isr_common
isr_stub_168:
    push 0
    push 168
    jmp isr_common
isr_stub_169:
    push 0
    push 169
    jmp isr_common
isr_stub_170:
    push 0
    push 170
    jmp isr_common
isr_stub_171:
    push 0
    push 171
    jmp isr_common
isr_stub_172:
    push 0
    push 172
    jmp isr_common
isr_stub_173:
    push 0
    push 173
    jmp isr_common
isr_stub_174:
    push 0
    push 174
    jmp isr_common
isr_stub_175:
    push 0
    push 175
    jmp isr_common
isr_stub_176:
    push 0
    push 176
    jmp isr_common
isr_stub_177:
    push 0
    push 177
    jmp isr_common
isr_stub_178:
    push 0
    push 178
    jmp isr_common
isr_stub_179:
    push 0
    push 179
    jmp isr_common
isr_stub_180:
    push 0
    push 180
    jmp isr_common
isr_stub_181:
    push 0
    push 181
    jmp isr_common
isr_stub_182:
    push 0
    push 182
    jmp isr_common
isr_stub_183:
    push 0
    push 183
    jmp isr_common
isr_stub_184:
    push 0
    push 184
    jmp isr_common
isr_stub_185:
    push 0
    push 185
    jmp isr_common
isr_stub_186:
    push 0
    push 186
    jmp isr_common
isr_stub_187:
    push 0
    push 187
    jmp isr_common
isr_stub_188:
    push 0
    push 188
    jmp isr_common
isr_stub_189:
    push 0
    push 189
    jmp isr_common
isr_stub_190:
    push 0
    push 190
    jmp isr_common
isr_stub_191:
    push 0
    push 191
    jmp isr_common
isr_stub_192:
    push 0
    push 192
    jmp isr_common
isr_stub_193:
    push 0
    push 193
    jmp isr_common
isr_stub_194:
    push 0
    push 194
    jmp isr_common
isr_stub_195:
    push 0
    push 195
    jmp isr_common
isr_stub_196:
    push 0
    push 196
    jmp isr_common
isr_stub_197:
    push 0
    push 197
    jmp isr_common
isr_stub_198:
    push 0
    push 198
    jmp isr_common
isr_stub_199:
    push 0
    push 199
    jmp isr_common
isr_stub_200:
    push 0
    push 200
    jmp isr_common
isr_stub_201:
    push 0
    push 201
    jmp isr_common
isr_stub_202:
    push 0
    push 202
    jmp isr_common
isr_stub_203:
    push 0
    push 203
    jmp isr_common
isr_stub_204:
    push 0
    push 204
    jmp isr_common
isr_stub_205:
    push 0
    push 205
    jmp isr_common
isr_stub_206:
    push 0
    push 206
    jmp isr_common
isr_stub_207:
    push 0
    push 207
    jmp isr_common
isr_stub_208:
    push 0
    push 208
    jmp isr_common
isr_stub_209:
    push 0
    push 209
    jmp isr_common
isr_stub_210:
    push 0
    push 210
    jmp isr_common
isr_stub_211:
    push 0
    push 211
    jmp isr_common
isr_stub_212:
    push 0
    push 212
    jmp isr_common
isr_stub_213:
    push 0
    push 213
    jmp isr_common
isr_stub_214:
    push 0
    push 214
    jmp isr_common
isr_stub_215:
    push 0
    push 215
    jmp isr_common
isr_stub_216:
    push 0
    push 216
    jmp isr_common
isr_stub_217:
    push 0
    push 217
    jmp isr_common
isr_stub_218:
    push 0
    push 218
    jmp isr_common
isr_stub_219:
    push 0
    push 219
    jmp isr_common
isr_stub_220:
    push 0
    push 220
    jmp isr_common
isr_stub_221:
    push 0
    push 221
    jmp isr_common
isr_stub_222:
    push 0
    push 222
    jmp isr_common
isr_stub_223:
    push 0
    push 223
    jmp isr_common
isr_stub_224:
    push 0
    push 224
    jmp isr_common
isr_stub_225:
    push 0
    push 225
    jmp isr_common
isr_stub_226:
    push 0
    push 226
    jmp isr_common
isr_stub_227:
    push 0
    push 227
    jmp isr_common
isr_stub_228:
    push 0
    push 228
    jmp isr_common
isr_stub_229:
    push 0
    push 229
    jmp isr_common
isr_stub_230:
    push 0
    push 230
    jmp isr_common
isr_stub_231:
    push 0
    push 231
    jmp isr_common
isr_stub_232:
    push 0
    push 232
    jmp isr_common
isr_stub_233:
    push 0
    push 233
    jmp isr_common
isr_stub_234:
    push 0
    push 234
    jmp isr_common
isr_stub_235:
    push 0
    push 235
    jmp isr_common
isr_stub_236:
    push 0
    push 236
    jmp isr_common
isr_stub_237:
    push 0
    push 237
    jmp isr_common
isr_stub_238:
    push 0
    push 238
    jmp isr_common
isr_stub_239:
    push 0
    push 239
    jmp isr_common
isr_stub_240:
    push 0
    push 240
    jmp isr_common
isr_stub_241:
    push 0
    push 241
    jmp isr_common
isr_stub_242:
    push 0
    push 242
    jmp isr_common
isr_stub_243:
    push 0
    push 243
    jmp isr_common
isr_stub_244:
    push 0
    push 244
    jmp isr_common
isr_stub_245:
    push 0
    push 245
    jmp isr_common
isr_stub_246:
    push 0
    push 246
    jmp isr_common
isr_stub_247:
    push 0
    push 247
    jmp isr_common
isr_stub_248:
    push 0
    push 248
    jmp isr_common
isr_stub_249:
    push 0
    push 249
    jmp isr_common
isr_stub_250:
    push 0
    push 250
    jmp isr_common
isr_stub_251:
    push 0
    push 251
    jmp isr_common
isr_stub_252:
    push 0
    push 252
    jmp isr_common
isr_stub_253:
    push 0
    push 253
    jmp isr_common
isr_stub_254:
    push 0
    push 254
    jmp isr_common
isr_stub_255:
    push 0
    push 255
    jmp isr_common

    .section .rodata
    .balign 8
    .global isr_table
isr_table:
    .quad isr_stub_0
    .quad isr_stub_1
    .quad isr_stub_2
    .quad isr_stub_3
    .quad isr_stub_4
    .quad isr_stub_5
    .quad isr_stub_6
    .quad isr_stub_7
    .quad isr_stub_8
    .quad isr_stub_9
    .quad isr_stub_10
    .quad isr_stub_11
    .quad isr_stub_12
    .quad isr_stub_13
    .quad isr_stub_14
    .quad isr_stub_15
    .quad isr_stub_16
    .quad isr_stub_17
    .quad isr_stub_18
    .quad isr_stub_19
    .quad isr_stub_20
    .quad isr_stub_21
    .quad isr_stub_22
    .quad isr_stub_23
    .quad isr_stub_24
    .quad isr_stub_25
    .quad isr_stub_26
    .quad isr_stub_27
    .quad isr_stub_28
    .quad isr_stub_29
    .quad isr_stub_30
    .quad isr_stub_31
    .quad isr_stub_32
    .quad isr_stub_33
    .quad isr_stub_34
    .quad isr_stub_35
    .quad isr_stub_36
    .quad isr_stub_37
    .quad isr_stub_38
    .quad isr_stub_39
    .quad isr_stub_40
    .quad isr_stub_41
    .quad isr_stub_42
    .quad isr_stub_43
    .quad isr_stub_44
    .quad isr_stub_45
    .quad isr_stub_46
    .quad isr_stub_47
    .quad isr_stub_48
    .quad isr_stub_49
    .quad isr_stub_50
    .quad isr_stub_51
    .quad isr_stub_52
    .quad isr_stub_53
    .quad isr_stub_54
    .quad isr_stub_55
    .quad isr_stub_56
    .quad isr_stub_57
    .quad isr_stub_58
    .quad isr_stub_59
    .quad isr_stub_60
    .quad isr_stub_61
    .quad isr_stub_62
    .quad isr_stub_63
    .quad isr_stub_64
    .quad isr_stub_65
    .quad isr_stub_66
    .quad isr_stub_67
    .quad isr_stub_68
    .quad isr_stub_69
    .quad isr_stub_70
    .quad isr_stub_71
    .quad isr_stub_72
    .quad isr_stub_73
    .quad isr_stub_74
    .quad isr_stub_75
    .quad isr_stub_76
    .quad isr_stub_77
    .quad isr_stub_78
    .quad isr_stub_79
    .quad isr_stub_80
    .quad isr_stub_81
    .quad isr_stub_82
    .quad isr_stub_83
    .quad isr_stub_84
    .quad isr_stub_85
    .quad isr_stub_86
    .quad isr_stub_87
    .quad isr_stub_88
    .quad isr_stub_89
    .quad isr_stub_90
    .quad isr_stub_91
    .quad isr_stub_92
    .quad isr_stub_93
    .quad isr_stub_94
    .quad isr_stub_95
    .quad isr_stub_96
    .quad isr_stub_97
    .quad isr_stub_98
    .quad isr_stub_99
    .quad isr_stub_100
    .quad isr_stub_101
    .quad isr_stub_102
    .quad isr_stub_103
    .quad isr_stub_104
    .quad isr_stub_105
    .quad isr_stub_106
    .quad isr_stub_107
    .quad isr_stub_108
    .quad isr_stub_109
    .quad isr_stub_110
    .quad isr_stub_111
    .quad isr_stub_112
    .quad isr_stub_113
    .quad isr_stub_114
    .quad isr_stub_115
    .quad isr_stub_116
    .quad isr_stub_117
    .quad isr_stub_118
    .quad isr_stub_119
    .quad isr_stub_120
    .quad isr_stub_121
    .quad isr_stub_122
    .quad isr_stub_123
    .quad isr_stub_124
    .quad isr_stub_125
    .quad isr_stub_126
    .quad isr_stub_127
    .quad isr_stub_128
    .quad isr_stub_129
    .quad isr_stub_130
    .quad isr_stub_131
    .quad isr_stub_132
    .quad isr_stub_133
    .quad isr_stub_134
    .quad isr_stub_135
    .quad isr_stub_136
    .quad isr_stub_137
    .quad isr_stub_138
    .quad isr_stub_139
    .quad isr_stub_140
    .quad isr_stub_141
    .quad isr_stub_142
    .quad isr_stub_143
    .quad isr_stub_144
    .quad isr_stub_145
    .quad isr_stub_146
    .quad isr_stub_147
    .quad isr_stub_148
    .quad isr_stub_149
    .quad isr_stub_150
    .quad isr_stub_151
    .quad isr_stub_152
    .quad isr_stub_153
    .quad isr_stub_154
    .quad isr_stub_155
    .quad isr_stub_156
    .quad isr_stub_157
    .quad isr_stub_158
    .quad isr_stub_159
    .quad isr_stub_160
    .quad isr_stub_161
    .quad isr_stub_162
    .quad isr_stub_163
    .quad isr_stub_164
    .quad isr_stub_165
    .quad isr_stub_166
    .quad isr_stub_167
    .quad isr_stub_168
    .quad isr_stub_169
    .quad isr_stub_170
    .quad isr_stub_171
    .quad isr_stub_172
    .quad isr_stub_173
    .quad isr_stub_174
    .quad isr_stub_175
    .quad isr_stub_176
    .quad isr_stub_177
    .quad isr_stub_178
    .quad isr_stub_179
    .quad isr_stub_180
    .quad isr_stub_181
    .quad isr_stub_182
    .quad isr_stub_183
    .quad isr_stub_184
    .quad isr_stub_185
    .quad isr_stub_186
    .quad isr_stub_187
    .quad isr_stub_188
    .quad isr_stub_189
    .quad isr_stub_190
    .quad isr_stub_191
    .quad isr_stub_192
    .quad isr_stub_193
    .quad isr_stub_194
    .quad isr_stub_195
    .quad isr_stub_196
    .quad isr_stub_197
    .quad isr_stub_198
    .quad isr_stub_199
    .quad isr_stub_200
    .quad isr_stub_201
    .quad isr_stub_202
    .quad isr_stub_203
    .quad isr_stub_204
    .quad isr_stub_205
    .quad isr_stub_206
    .quad isr_stub_207
    .quad isr_stub_208
    .quad isr_stub_209
    .quad isr_stub_210
    .quad isr_stub_211
    .quad isr_stub_212
    .quad isr_stub_213
    .quad isr_stub_214
    .quad isr_stub_215
    .quad isr_stub_216
    .quad isr_stub_217
    .quad isr_stub_218
    .quad isr_stub_219
    .quad isr_stub_220
    .quad isr_stub_221
    .quad isr_stub_222
    .quad isr_stub_223
    .quad isr_stub_224
    .quad isr_stub_225
    .quad isr_stub_226
    .quad isr_stub_227
    .quad isr_stub_228
    .quad isr_stub_229
    .quad isr_stub_230
    .quad isr_stub_231
    .quad isr_stub_232
    .quad isr_stub_233
    .quad isr_stub_234
    .quad isr_stub_235
    .quad isr_stub_236
    .quad isr_stub_237
    .quad isr_stub_238
    .quad isr_stub_239
    .quad isr_stub_240
    .quad isr_stub_241
    .quad isr_stub_242
    .quad isr_stub_243
    .quad isr_stub_244
    .quad isr_stub_245
    .quad isr_stub_246
    .quad isr_stub_247
    .quad isr_stub_248
    .quad isr_stub_249
    .quad isr_stub_250
    .quad isr_stub_251
    .quad isr_stub_252
    .quad isr_stub_253
    .quad isr_stub_254
    .quad isr_stub_255
